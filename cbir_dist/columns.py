"""Column names of the one batch contract: every stage passes ``dict[str, np.ndarray]`` keyed by these."""

ID = "id"  # int64 content id (hash of the file bytes), the Milvus primary key
PATH = "path"  # str, the file the row came from
LABEL = "label"  # str, class = name of the parent folder
IMAGE = "image"  # uint8 H x W x 3 RGB (object array of such arrays when sizes differ)
MASK = "mask"  # bool H x W, True = known pixel
VECTOR = "vector"  # float32 fused feature vector
STATUS = "status"  # str: "ok" | "duplicate" | "rejected"
ERROR = "error"  # str, why a row was rejected ("" when ok)


def block_column(name: str) -> str:
    """Column holding the per-image features of one FeatureSpec block, e.g. ``feat_gabor``."""
    return f"feat_{name}"

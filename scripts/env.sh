# Sourced by the scripts: offline-friendly defaults for this checkout.
# TORCH_HOME: use the shared weights cache beside the checkout when present (torchvision finds
# MobileNetV2's file there and downloads nothing); otherwise torchvision's default cache is used.
_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ -z "${TORCH_HOME:-}" ] && [ -d "$_root/../shared/weights/torch" ]; then
  export TORCH_HOME="$(cd "$_root/../shared/weights/torch" && pwd)"
fi
export RAY_AUTH_MODE="${RAY_AUTH_MODE:-disabled}"
export RAY_USAGE_STATS_ENABLED="${RAY_USAGE_STATS_ENABLED:-0}"
# ImageNet VGG-16 conv weights are in the shared folder (no hub download needed): see CBIR_WEIGHTS in README.
if [ -z "${CBIR_WEIGHTS:-}" ] && [ -f "$_root/../shared/weights/vgg16_features_imagenet.pth" ]; then
  export CBIR_WEIGHTS="vgg16=$(cd "$_root/../shared/weights" && pwd)/vgg16_features_imagenet.pth"
fi

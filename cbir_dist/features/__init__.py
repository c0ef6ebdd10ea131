"""What describes an image: the feature spec and fusion, named profiles, extraction, backbones, descriptors."""

"""cxr-edge build side: datasets, model zoo and training (torch, torchvision, timm); export and quantisation."""

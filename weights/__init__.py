"""Pretrained weights shipped with multizoo: canonical safetensors files and manifest.json (see zoo.pretrained)."""

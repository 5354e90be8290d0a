"""Minimal stand-in for the parts of timm that MobileSAM's TinyViT imports.

Only for the parity test (tests/test_tiny_vit.py); it is put on ``sys.path``
there only when the real timm is not installed. The real timm imports
torchvision at import time, which the test environment lacks.
"""

"""hlgfa-edge runtime: frames in, one verdict per frame out.

Nothing in this package imports torch. Heavy optional libraries (tensorrt, pycuda,
onnxruntime, torch, harvesters) are imported inside the one module that uses them.
"""

__version__ = "0.1.0"

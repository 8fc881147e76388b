"""The contract between the exported graph and every runtime that runs it: the tensor names, and
the metadata keys `hlgfa export` writes into the ONNX file (a TensorRT engine build reads them too)."""

INPUT_NAME = "images"  # N×3×H×W float32, preprocessed (edge/imaging/preprocess.py)
OUTPUT_NAMES = ("anomaly_map", "score")  # N×H×W float32, N float32

META_FORMAT = "hlgfa.format"
META_MODEL_HASH = "hlgfa.model_hash"  # the model directory's hash: a graph of another model is refused
META_INPUT_SIZE = "hlgfa.input_size"  # "HxW"
META_PRECISION = "hlgfa.precision"  # "fp32" or "fp16"
META_MAX_BATCH = "hlgfa.max_batch"
META_PREPROCESS = "hlgfa.preprocess"  # the model directory's preprocessing description, as JSON

"""Task pipelines: preprocess -> infer (Triton) -> postprocess, one histogram per stage."""

"""What the tests and the benchmark scripts share, outside the runtime package `cljax` (which never
needs PyTorch): the PyTorch oracle (`torch_oracle`, needs the test extra's torch) and the small
helpers of the suite (`helpers`: demo configs at test size, loading a script as a module)."""

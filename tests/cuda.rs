//! CUDA: generated kernels compiled by NVRTC; on a GPU, CUDA against the CPU executor.

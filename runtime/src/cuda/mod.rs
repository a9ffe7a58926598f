//! The CUDA executor: NVRTC, cuBLAS and one device arena. (Being built: issue 5.)

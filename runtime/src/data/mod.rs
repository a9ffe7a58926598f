//! Data in and out: `.npy`, safetensors and seeded random tensors. (Being built: issue 4.)

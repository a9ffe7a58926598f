//! Code generation: CUDA C for every fused kernel of a plan. (Being built: issue 5.)

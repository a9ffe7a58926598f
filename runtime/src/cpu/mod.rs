//! The CPU executor: runs a plan's kernels on one host arena. (Being built: issue 4.)

"""Every fine-tuning method on the same split and budget: trained, exported, timed in process and on Triton."""

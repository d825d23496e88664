"""The real-code probe: upstream OpenVLA-OFT's own classes and `run_forward_pass` on synthetic batches."""

"""Helpers of scripts/probe_finetune.py (the OpenVLA-OFT memory probe)."""

"""The VLA_PROBE_RESULT line: one definition, byte-compatible with the lines printed before it."""

from __future__ import annotations

import json

from vlalaunch.result import MARK, ProbeResult

# Printed by scripts/probe_finetune.py before ProbeResult existed (VLA_PROBE_TINY, CPU).
STAND_IN_LINE = (
    'VLA_PROBE_RESULT {"rank":0,"world_size":1,"local_rank":0,"gpu_uuid":null,"device_name":"cpu",'
    '"platform":"LIBERO","batch_size":4,"grad_accumulation_steps":1,"num_images_in_input":2,"use_film":false,'
    '"use_proprio":true,"use_fsdp":false,"gradient_checkpointing":false,"wrap_units":3,"lora_rank":32,'
    '"vram_cap_bytes":null,"static_bytes":null,"peak_alloc_bytes":null,"peak_reserved_bytes":null,'
    '"peak_nvml_used_bytes":null,"peak_nvml_used_v2_bytes":null,"s_per_step":0.2077228620000824,'
    '"samples_per_s":19.25642638217845,"steps":3,"last_loss":0.8671875,"tiny":true,'
    '"params":{"total":644679,"trainable":317191}}'
)
# The real-code probe's four extra keys, on a GPU (as the launcher reads it).
REAL_LINE = (
    'VLA_PROBE_RESULT {"rank":1,"world_size":2,"local_rank":1,"gpu_uuid":"GPU-0f1e","device_name":"NVIDIA H100",'
    '"platform":"ALOHA","batch_size":4,"grad_accumulation_steps":1,"num_images_in_input":3,"use_film":true,'
    '"use_proprio":true,"use_fsdp":false,"gradient_checkpointing":false,"wrap_units":3,"lora_rank":32,'
    '"vram_cap_bytes":null,"static_bytes":20437266432,"peak_alloc_bytes":60000000000,'
    '"peak_reserved_bytes":61000000000,"peak_nvml_used_bytes":66591506432,"peak_nvml_used_v2_bytes":66000000000,'
    '"s_per_step":1.5,"samples_per_s":5.3,"steps":10,"last_loss":0.5,"tiny":false,'
    '"params":{"total":8390000000,"trainable":852557326},"real_code":true,"text_tokens":397,'
    '"attn_implementation":"sdpa","torch":"2.2.0+cu121"}'
)


def test_old_lines_round_trip_byte_for_byte() -> None:
    for line in (STAND_IN_LINE, REAL_LINE):
        parsed = ProbeResult.parse_line(line)
        assert parsed is not None
        assert parsed.to_line() == line


def test_new_keys_are_appended_and_optional() -> None:
    r = ProbeResult.parse_line(STAND_IN_LINE)
    assert r is not None
    r.sdpa_kernel = "flash:50,efficient:32"
    r.peak_alloc_by_step = [1, 2]
    line = r.to_line()
    assert line.startswith(STAND_IN_LINE[:-1] + ",")
    data = json.loads(line[len(MARK) :])
    assert list(data)[-2:] == ["sdpa_kernel", "peak_alloc_by_step"]


def test_parse_log_with_torchrun_prefixes_and_tqdm_carriage_returns() -> None:
    log = f"noise\n 33%|###  | 1/3\r[rank1]:{REAL_LINE}\r100%\n{STAND_IN_LINE}\nVLA_PROBE_RESULT {{broken\n"
    got = ProbeResult.parse_log(log)
    assert [r.rank for r in got] == [1, 0]
    assert got[0].gpu_uuid == "GPU-0f1e" and got[0].peak_nvml_used_bytes == 66591506432


def test_unknown_keys_survive_and_missing_keys_reject() -> None:
    data = json.loads(STAND_IN_LINE[len(MARK) :])
    data["from_the_future"] = 7
    r = ProbeResult.from_dict(data)
    assert r.extra == {"from_the_future": 7}
    assert r.to_dict()["from_the_future"] == 7
    del data["gpu_uuid"]
    assert ProbeResult.parse_line(MARK + json.dumps(data)) is None

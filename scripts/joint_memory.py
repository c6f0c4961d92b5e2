"""Measure the memory crossgate holds for the frozen text stream of FLUX.1-dev, per block, on the CPU.

FLUX.1-dev does not fit this machine (12B parameters), and what each joint block holds does not
depend on the number of blocks: so the transformer is built at FLUX.1-dev's published config
(3072 wide, 24 heads; crossgate/configs/flux1_dev_transformer.json) with one double-stream and one
single-stream block, random weights, bf16, and called with a 512-token prompt (T5 at
``max_sequence_length=512``, FLUX.1-dev's). After the gate, at every step, the script sums the bytes
of the storages that hold each block's frozen text stream (distinct storages, so a view of a larger
tensor counts the whole tensor it keeps alive), per block kind, and scales them to FLUX.1-dev's 19
double and 38 single blocks. The formula in docs/joint-attention.md is printed beside it::

    python scripts/joint_memory.py            # about a minute, ~3 GB of RAM
"""

from __future__ import annotations

import argparse


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--true-cfg", action="store_true", help="run true CFG (a negative prompt)")
    args = parser.parse_args()

    import torch

    import crossgate
    from crossgate.gate import current_call
    from crossgate.hooks import JointRecord
    from crossgate.loading import bundled_config
    from crossgate.testing import joint_architecture_pipeline

    config = bundled_config("flux1_dev_transformer.json")
    full = {"double": config["num_layers"], "single": config["num_single_layers"]}
    hidden = config["num_attention_heads"] * config["attention_head_dim"]
    pipe = joint_architecture_pipeline(
        {**config, "num_layers": 1, "num_single_layers": 1}, dtype=torch.bfloat16
    )
    pipe.set_progress_bar_config(disable=True)
    text_tokens = 512
    held: list[dict[str, int]] = []

    def on_step_end(p, i, t, kwargs):
        call = current_call()
        if call is not None and call.gated:
            per_kind: dict[str, int] = {}
            for key, record in call.records.items():
                if not isinstance(record, JointRecord):
                    continue
                kind = "single" if "single_transformer_blocks" in key else "double"
                storages = {}
                for stream in [*record.frozen.values(), *record.latest.values()]:
                    for tensor in (stream.key, stream.value, stream.output):
                        if tensor is not None:
                            storage = tensor.untyped_storage()
                            storages[storage.data_ptr()] = storage.nbytes()
                per_kind[kind] = per_kind.get(kind, 0) + sum(storages.values())
            held.append(per_kind)
        return {}

    kwargs = {"prompt": "a red circle", "height": 64, "width": 64, "num_inference_steps": 4}
    kwargs |= {"max_sequence_length": text_tokens, "guidance_scale": 3.5, "output_type": "latent"}
    if args.true_cfg:
        kwargs |= {"negative_prompt": "a blue square", "true_cfg_scale": 4.0}
    with crossgate.enabled(pipe, gate_step=2):
        pipe(**kwargs, callback_on_step_end=on_step_end, generator=torch.Generator().manual_seed(0))
    assert held and all(h == held[0] for h in held), held
    per_block = held[0]
    total = sum(per_block[kind] * full[kind] for kind in full)
    formula = (
        sum(full.values()) * 3 * 1 * text_tokens * hidden * 2
    )  # blocks x 3 x rows x tokens x hidden x bf16
    cfg = "true CFG" if args.true_cfg else "guidance-distilled (no CFG)"
    print(f"FLUX.1-dev widths, {text_tokens} text tokens, bf16, {cfg}; held after the gate, at every step:")
    print("| block kind | bytes per block | blocks in FLUX.1-dev | bytes |")
    print("|---|---|---|---|")
    for kind in full:
        print(f"| {kind} | {per_block[kind]:,} | {full[kind]} | {per_block[kind] * full[kind]:,} |")
    print(f"| total | | {sum(full.values())} | {total:,} ({total / 2**20:.0f} MiB) |")
    print(
        f"formula: {sum(full.values())} x 3 x 1 x {text_tokens} x {hidden} x 2 bytes = {formula:,} ({formula / 2**20:.0f} MiB)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

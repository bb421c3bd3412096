#!/usr/bin/env python3
"""Render `hedge bench --json` output (one JSON object per line) as a Markdown table."""
import json
import sys

rows = []
header = []
for line in open(sys.argv[1] if len(sys.argv) > 1 else "/dev/stdin"):
    line = line.strip()
    if line.startswith("# "):
        header.append(line[2:])
        continue
    if line.startswith("{"):
        rows.append(json.loads(line))

print("\n".join(f"Machine and command: {h}" if i == 0 else f"`{h}`" for i, h in enumerate(header)))
print()
print("| variant | features | bits | infer ms | peak MB | margin bits | enc. model KB | × float32 | bundle MB | result KB | model enc. ms | decrypt ms | inputs | correct |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
for c in rows:
    print(
        f"| {c['variant']} | {c['features']} | {c['security']} | {c['infer_ms']:.1f} | {c['peak_rss_mb']:.0f} "
        f"| {c['noise_margin_bits']:.1f} | {c['model_bytes']/1024:.0f} | {c['model_ratio']:.2f} "
        f"| {c['bundle_bytes']/1e6:.1f} | {c['result_bytes']/1024:.0f} | {c['encrypt_model_ms']:.0f} "
        f"| {c['decrypt_ms']:.2f} | {c['inputs']} | {'yes' if c['correct'] else 'NO'} |"
    )
plain = {}
for c in rows:
    if c.get("plaintext_ms") is not None:
        plain.setdefault(c["variant"], []).append(c["plaintext_ms"])
if plain:
    print()
    print("Unencrypted float32 classifier on the same inputs (`--plaintext`): " + ", ".join(
        f"{v} {min(t):.2f}–{max(t):.2f} ms" for v, t in plain.items()))

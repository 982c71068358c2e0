"""Convert the embedded SmolLM2 GGUF and compare greedy decoding of the folder (plain
`mlx_lm.load`) with the GGUF read directly (`load_gguf`, rope_traditional=True).

    python benchmarks/convert_smollm2.py [--max-tokens 24] [--prompt TEXT] [--out DIR]
"""

import argparse
import tempfile
import time
from pathlib import Path

import mlx.core as mx

PROMPT = "What is the capital of France?"


def greedy(model, tokenizer, prompt_ids, max_tokens):
    from mlx_lm.generate import generate_step

    out = []
    for tok, _ in generate_step(mx.array(prompt_ids), model, max_tokens=max_tokens):
        if int(tok) in tokenizer.eos_token_ids:
            break
        out.append(int(tok))
    return out


def run(out_dir: Path, max_tokens: int, prompt_text: str = PROMPT) -> dict:
    import mlx_lm

    from mlx_vgb.convert import convert_gguf, load_gguf
    from mlx_vgb.default_model import default_gguf_path

    gguf = default_gguf_path()
    t = time.perf_counter()
    folder = convert_gguf(gguf, out_dir / "SmolLM2", force=True)
    convert_s = time.perf_counter() - t

    model, tok = mlx_lm.load(str(folder))
    prompt = tok.apply_chat_template(
        [{"role": "user", "content": prompt_text}], add_generation_prompt=True
    )
    t = time.perf_counter()
    folder_ids = greedy(model, tok, prompt, max_tokens)
    folder_s = time.perf_counter() - t

    direct_model, direct_tok = load_gguf(gguf)
    direct_prompt = direct_tok.apply_chat_template(
        [{"role": "user", "content": prompt_text}], add_generation_prompt=True
    )
    direct_ids = greedy(direct_model, direct_tok, direct_prompt, max_tokens)
    return {
        "convert_s": convert_s,
        "folder_tok_per_s": len(folder_ids) / folder_s,
        "prompt_match": prompt == direct_prompt,
        "tokens_match": folder_ids == direct_ids,
        "folder_ids": folder_ids,
        "direct_ids": direct_ids,
        "text": tok.decode(folder_ids),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--max-tokens", type=int, default=24)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--prompt", default=PROMPT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        r = run(args.out or Path(tmp), args.max_tokens, args.prompt)
    for k, v in r.items():
        print(f"{k}: {v!r}")


if __name__ == "__main__":
    main()

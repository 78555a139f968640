"""tools/generate_text.py: load a TP2 checkpoint on one process and sample (greedy, top-k, top-p)."""
import os
import sys

import torch

from dist_utils import run_distributed
from megatron_sp.training.loop import pretrain

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import generate_text  # noqa: E402

ARGS = ("--mock-data --tokenizer-type NullTokenizer --vocab-size 100 --num-layers 2 --hidden-size 32 "
        "--num-attention-heads 4 --seq-length 32 --micro-batch-size 2 --global-batch-size 4 --lr 1e-2 "
        "--log-interval 100 --eval-interval 0 --train-iters 2 --hidden-dropout 0 --attention-dropout 0").split()


def test_sample_next_filters():
    logits = torch.tensor([0.0, 3.0, 1.0, 2.0, -1.0])
    g = torch.Generator().manual_seed(0)
    assert generate_text.sample_next(logits, greedy=True) == 1
    assert generate_text.sample_next(logits, top_k=1, generator=g) == 1
    assert generate_text.sample_next(logits, top_p=1e-3, generator=g) == 1
    picks = {generate_text.sample_next(logits, top_k=2, generator=g) for _ in range(200)}
    assert picks == {1, 3}
    picks = {generate_text.sample_next(logits, top_p=0.8, temperature=1.0, generator=g) for _ in range(200)}
    assert picks <= {1, 3, 2} and 1 in picks  # 0.665 + 0.245 >= 0.8: top two (three at most)


def _train(rank, world, save):
    pretrain(ARGS + ["--tensor-model-parallel-size", "2", "--sequence-parallel", "--save", save])


def test_generate_from_tp2_checkpoint(tmp_path, capsys):
    save = str(tmp_path / "ck")
    run_distributed(_train, 2, save)
    model, stored = generate_text.load_model(save)
    assert stored.tensor_model_parallel_size == 2 and model.mesh.tp_size == 1
    full = generate_text.ckpt.read_full_model(os.path.join(save, "iter_0000002"))
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), full[name]), name
    prompt = [5, 6, 7, 5, 6, 7, 5]  # odd length: any prompt length works
    a = generate_text.generate(model, prompt, 8, real_vocab=101, greedy=True)
    b = generate_text.generate(model, prompt, 8, real_vocab=101, greedy=True)
    assert a == b and a[:7] == prompt and len(a) == 15 and max(a) < 101
    long = generate_text.generate(model, prompt * 6, 3, real_vocab=101, top_k=5, top_p=0.9,
                                  generator=torch.Generator().manual_seed(1))  # longer than --seq-length
    assert len(long) == 45
    rc = generate_text.main(["--load", save, "--prompt", "5 6 7", "--top-k", "4", "--max-new-tokens", "5",
                             "--num-samples", "2", "--ignore-eod"])
    out = capsys.readouterr().out
    assert rc == 0 and out.count("--- sample") == 2
    assert all(len(line.split()) == 8 for line in out.splitlines() if not line.startswith("---"))
    # --iteration naming a checkpoint that is not there: the flag is blamed, not the tracker
    capsys.readouterr()
    assert generate_text.main(["--load", save, "--iteration", "99", "--prompt", "5 6 7"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: --iteration 99: --load ") and \
        "no iter_0000099" in err and "iterations 2; the tracker names 2" in err and "points at" not in err, err

"""Run `train` under torchrun and keep each rank's weights and EMA after every save, for the tests of what the
ranks share: `torchrun --nproc_per_node=2 -m tests.ddp_probe CONFIG_JSON OUT_DIR`."""

import json
import sys
from pathlib import Path

import torch

from t2t_vit.training import state as train_state
from t2t_vit.training.engine import unwrap
from t2t_vit.training.process import end_distributed
from t2t_vit.training.run import train


def main() -> None:
    cfg, out = json.loads(sys.argv[1]), Path(sys.argv[2])
    save = train_state.TrainState.save

    def save_and_keep(self, run_dir, *args, **kwargs):
        save(self, run_dir, *args, **kwargs)
        ema = self.ema.module.state_dict() if self.ema is not None else None
        torch.save(dict(model=unwrap(self.model).state_dict(), ema=ema), out / f"rank{self.rank}.pt")

    train_state.TrainState.save = save_and_keep
    train(cfg, progress=False)
    end_distributed()


if __name__ == "__main__":
    main()

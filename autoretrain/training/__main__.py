"""`python -m autoretrain.training DATASET_DIR …` is `autoretrain train`, in a form that
`accelerate launch -m autoretrain.training …` can start on several processes or GPUs."""

from autoretrain.cli.training import train

if __name__ == "__main__":
    train(prog_name="python -m autoretrain.training")

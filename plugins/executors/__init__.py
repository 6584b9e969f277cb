"""Built-in executors that hand runs to another engine (Slurm through submitit)."""

"""`python -m vfmvae ...` (also what `torchrun -m vfmvae ...` runs)."""

from vfmvae.cli import main

if __name__ == "__main__":
    raise SystemExit(main())

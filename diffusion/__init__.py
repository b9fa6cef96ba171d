"""User-conditioned diffusion prior over item embeddings (and, in
`decode.py`, their decoding to images). See `docs/diffusion.md`."""

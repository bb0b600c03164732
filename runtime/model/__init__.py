"""Models of the runtime: the Helios transformer, the Wan VAE, text encoders, checkpoint loading."""

"""Running one session on several GPUs: context parallelism of the transformer (`context`), the
process group of an engine worker's ranks (`launch`) and the replicated engine (`replicated`)."""

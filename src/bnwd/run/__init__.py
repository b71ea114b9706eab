"""One run = one folder: config, data, the run folder's files, the trainer, throughput benchmarks."""

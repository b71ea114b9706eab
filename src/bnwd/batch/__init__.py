"""Many runs: the article's reproduction and grid sweeps over a process pool or Ray."""

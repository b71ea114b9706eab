"""bnwd: batch norm + weight decay = an effective learning rate."""

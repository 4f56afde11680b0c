"""The local stack: the pieces that stand in for AWS and TF Serving on one machine."""

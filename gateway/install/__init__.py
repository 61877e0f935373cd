"""Installing vpatch on a real machine: the network configuration (network.py). The files of the
system install itself (units, users, directories) are written by scripts/install.sh --system."""

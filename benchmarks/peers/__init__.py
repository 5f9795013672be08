"""Side-by-side benchmark of KubeSentiment against peer serving frameworks (`make bench-peers`)."""

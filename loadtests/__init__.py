"""k6 load-test scenarios for KubeSentiment and the runner that aims them at local functions."""

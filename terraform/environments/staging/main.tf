# staging: prod's machine types on the REGULAR channel, smaller pools, Spot GPUs.
# Only this file is the environment's own; providers.tf, versions.tf, variables.tf, outputs.tf
# and moved.tf link to ../../shared, and modules/stack wires the modules together.

terraform {
  # State per environment; the bucket is passed at init: terraform init -backend-config=bucket=NAME
  backend "gcs" {
    prefix = "kubesentiment/staging"
  }
}

module "stack" {
  source = "../../modules/stack"

  environment = "staging"
  foundation  = local.foundation

  release_channel     = "REGULAR"
  cpu_machine_type    = "c3-standard-8"
  cpu_min_nodes       = 1
  cpu_max_nodes       = 4
  gpu_min_nodes       = 0
  gpu_max_nodes       = 1
  gpu_spot            = true
  deletion_protection = true

  monitoring_retention    = "7d"
  monitoring_storage_size = "50Gi"
}

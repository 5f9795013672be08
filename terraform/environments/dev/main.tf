# dev: the cheapest; newest GKE, Spot GPUs, no deletion protection, short retention.
# Only this file is the environment's own; providers.tf, versions.tf, variables.tf, outputs.tf
# and moved.tf link to ../../shared, and modules/stack wires the modules together.

terraform {
  # State per environment; the bucket is passed at init: terraform init -backend-config=bucket=NAME
  backend "gcs" {
    prefix = "kubesentiment/dev"
  }
}

module "stack" {
  source = "../../modules/stack"

  environment = "dev"
  foundation  = local.foundation

  release_channel     = "RAPID"
  cpu_machine_type    = "c3-standard-4"
  cpu_min_nodes       = 1
  cpu_max_nodes       = 3
  gpu_min_nodes       = 0
  gpu_max_nodes       = 1
  gpu_spot            = true
  deletion_protection = false

  monitoring_retention    = "3d"
  monitoring_storage_size = "20Gi"
}

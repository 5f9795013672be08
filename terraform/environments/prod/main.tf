# prod: STABLE channel, a warm GPU node on standard VMs, the largest pools and retention.
# Only this file is the environment's own; providers.tf, versions.tf, variables.tf, outputs.tf
# and moved.tf link to ../../shared, and modules/stack wires the modules together.

terraform {
  # State per environment; the bucket is passed at init: terraform init -backend-config=bucket=NAME
  backend "gcs" {
    prefix = "kubesentiment/prod"
  }
}

module "stack" {
  source = "../../modules/stack"

  environment = "prod"
  foundation  = local.foundation

  release_channel     = "STABLE"
  cpu_machine_type    = "c3-standard-8"
  cpu_min_nodes       = 2
  cpu_max_nodes       = 10
  gpu_min_nodes       = 1
  gpu_max_nodes       = 4
  gpu_spot            = false
  deletion_protection = true

  monitoring_retention    = "30d"
  monitoring_storage_size = "200Gi"
}

# prod: composes the modules; only sizes and names differ between environments.

locals {
  environment = "prod"
  labels = {
    app         = "kubesentiment"
    environment = local.environment
  }
}

module "cluster" {
  source = "../../modules/cluster"

  project_id                 = var.project_id
  name                       = "kubesentiment-${local.environment}"
  region                     = var.region
  network                    = var.network
  subnetwork                 = var.subnetwork
  pods_range_name            = "pods"
  services_range_name        = "services"
  master_ipv4_cidr_block     = var.master_ipv4_cidr_block
  master_authorized_networks = var.master_authorized_networks
  rbac_security_group        = var.rbac_security_group
  node_service_account       = var.node_service_account
  database_encryption_key    = var.database_encryption_key
  release_channel            = "STABLE"
  cpu_machine_type           = "c3-standard-8"
  cpu_min_nodes              = 2
  cpu_max_nodes              = 10
  gpu_min_nodes              = 1
  gpu_max_nodes              = 4
  gpu_spot                   = false
  deletion_protection        = true
  labels                     = local.labels
}

module "knative" {
  source = "../../modules/knative"

  depends_on = [module.cluster]
}

module "vault" {
  source = "../../modules/vault"

  kubernetes_host    = "https://${module.cluster.endpoint}"
  kubernetes_ca_cert = base64decode(module.cluster.ca_certificate)
}

module "monitoring" {
  source = "../../modules/monitoring"

  retention    = "30d"
  storage_size = "200Gi"

  depends_on = [module.cluster]
}

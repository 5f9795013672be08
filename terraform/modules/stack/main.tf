# Everything one environment runs, wired once: the GKE cluster, then Knative, Vault's
# configuration and the monitoring stack on it. Environments differ only in the values they pass.

locals {
  labels = {
    app         = "kubesentiment"
    environment = var.environment
  }
  kubernetes_host           = "https://${module.cluster.endpoint}"
  kubernetes_ca_certificate = base64decode(module.cluster.ca_certificate)
}

module "cluster" {
  source = "../cluster"

  project_id                 = var.foundation.project_id
  name                       = "kubesentiment-${var.environment}"
  region                     = var.foundation.region
  network                    = var.foundation.network
  subnetwork                 = var.foundation.subnetwork
  pods_range_name            = "pods"
  services_range_name        = "services"
  master_ipv4_cidr_block     = var.foundation.master_ipv4_cidr_block
  master_authorized_networks = var.foundation.master_authorized_networks
  rbac_security_group        = var.foundation.rbac_security_group
  node_service_account       = var.foundation.node_service_account
  database_encryption_key    = var.foundation.database_encryption_key
  release_channel            = var.release_channel
  cpu_machine_type           = var.cpu_machine_type
  cpu_min_nodes              = var.cpu_min_nodes
  cpu_max_nodes              = var.cpu_max_nodes
  gpu_min_nodes              = var.gpu_min_nodes
  gpu_max_nodes              = var.gpu_max_nodes
  gpu_spot                   = var.gpu_spot
  deletion_protection        = var.deletion_protection
  labels                     = local.labels
}

module "knative" {
  source = "../knative"

  depends_on = [module.cluster]
}

module "vault" {
  source = "../vault"

  kubernetes_host    = local.kubernetes_host
  kubernetes_ca_cert = local.kubernetes_ca_certificate
}

module "monitoring" {
  source = "../monitoring"

  retention    = var.monitoring_retention
  storage_size = var.monitoring_storage_size

  depends_on = [module.cluster]
}

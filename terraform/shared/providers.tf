# Shared by every environment: environments/<name>/providers.tf links here. Providers are
# configured in the root module only; modules/stack and the modules it calls inherit them.

provider "google" {
  project = var.project_id
  region  = var.region
}

data "google_client_config" "current" {}

provider "kubernetes" {
  host                   = module.stack.kubernetes_host
  cluster_ca_certificate = module.stack.kubernetes_ca_certificate
  token                  = data.google_client_config.current.access_token
}

provider "helm" {
  kubernetes = {
    host                   = module.stack.kubernetes_host
    cluster_ca_certificate = module.stack.kubernetes_ca_certificate
    token                  = data.google_client_config.current.access_token
  }
}

provider "vault" {
  address = var.vault_address
}

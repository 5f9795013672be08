# Knative Serving and Eventing, installed by the Knative Operator, with the settings the
# manifests in knative/ rely on:
# - config-features: nodeSelector and tolerations in revisions (the GPU Service needs both) and
#   persistentVolumeClaim volumes (an adapted model served from the batch volume);
# - config-autoscaler: scale to zero and the KPA windows;
# - config-deployment: the default progress deadline.
# The KnativeServing/KnativeEventing resources need the operator's CRDs to exist at plan time:
# on a new cluster, apply helm_release.operator first (-target), then the rest.

locals {
  # The flags knative/base/config-features.yaml also sets; Terraform-managed clusters get
  # them here, through the operator (which would overwrite a hand-edited ConfigMap).
  features = merge({
    "kubernetes.podspec-nodeselector"            = "enabled"
    "kubernetes.podspec-tolerations"             = "enabled"
    "kubernetes.podspec-persistent-volume-claim" = "enabled"
  }, var.extra_features)
}

resource "helm_release" "operator" {
  name             = "knative-operator"
  repository       = "https://knative.github.io/operator"
  chart            = "knative-operator"
  version          = var.operator_chart_version
  namespace        = "knative-operator"
  create_namespace = true
  atomic           = true
  wait             = true
}

resource "kubernetes_namespace_v1" "serving" {
  metadata {
    name = "knative-serving"
  }
}

resource "kubernetes_namespace_v1" "eventing" {
  metadata {
    name = "knative-eventing"
  }
}

resource "kubernetes_manifest" "serving" {
  manifest = {
    apiVersion = "operator.knative.dev/v1beta1"
    kind       = "KnativeServing"
    metadata = {
      name      = "knative-serving"
      namespace = kubernetes_namespace_v1.serving.metadata[0].name
    }
    spec = {
      version = var.knative_version
      config = {
        autoscaler = var.autoscaler
        features   = local.features
        deployment = {
          "progress-deadline" = var.progress_deadline
        }
      }
    }
  }

  depends_on = [helm_release.operator]
}

resource "kubernetes_manifest" "eventing" {
  manifest = {
    apiVersion = "operator.knative.dev/v1beta1"
    kind       = "KnativeEventing"
    metadata = {
      name      = "knative-eventing"
      namespace = kubernetes_namespace_v1.eventing.metadata[0].name
    }
    spec = {
      version = var.knative_version
      config = {
        "config-br-defaults" = {
          "default-br-config" = yamlencode({
            clusterDefault = {
              brokerClass = var.broker_class
              apiVersion  = "v1"
              kind        = "ConfigMap"
              name        = "config-br-default-channel"
              namespace   = "knative-eventing"
            }
          })
        }
      }
    }
  }

  depends_on = [helm_release.operator]
}

{{/* Chart name, truncated to a DNS label. */}}
{{- define "oxcast.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name of the release's resources: <release>-oxcast, or just the release
name when it already contains the chart name.
*/}}
{{- define "oxcast.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "oxcast.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels on every resource of the chart. */}}
{{- define "oxcast.labels" -}}
helm.sh/chart: {{ include "oxcast.chart" . }}
{{ include "oxcast.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: oxcast
{{- end }}

{{/* Labels that select the operator pods; never change them in an upgrade. */}}
{{- define "oxcast.selectorLabels" -}}
app.kubernetes.io/name: {{ include "oxcast.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "oxcast.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "oxcast.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* repository[:tag][@digest], the tag defaulting to the chart's appVersion. */}}
{{- define "oxcast.image" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag }}
{{- if .image.digest }}
{{- printf "%s@%s" .image.repository .image.digest }}
{{- else }}
{{- printf "%s:%s" .image.repository $tag }}
{{- end }}
{{- end }}

{{- define "oxcast.operatorImage" -}}
{{- include "oxcast.image" (dict "root" . "image" .Values.operator.image) }}
{{- end }}

{{- define "oxcast.ingestImage" -}}
{{- include "oxcast.image" (dict "root" . "image" .Values.ingest.image) }}
{{- end }}

{{/* The watched namespaces, de-duplicated and in a stable order. */}}
{{- define "oxcast.watchNamespaces" -}}
{{- .Values.watchNamespaces | uniq | sortAlpha | join "," }}
{{- end }}

{{/*
Rules the operator needs in every namespace it manages LiveApplications in
(the whole cluster through a ClusterRole, or each watched namespace through a
Role). Keep in step with operator/rbac.md, the operator's own list.
*/}}
{{- define "oxcast.managedRules" -}}
# Its own API: watch LiveApplications, report their status (server-side
# apply on the status subresource).
- apiGroups: [live.oxcast.dev]
  resources: [liveapplications]
  verbs: [get, list, watch]
- apiGroups: [live.oxcast.dev]
  resources: [liveapplications/status]
  verbs: [patch]
# Owner references with blockOwnerDeletion (where the
# OwnerReferencesPermissionEnforcement admission plugin is on).
- apiGroups: [live.oxcast.dev]
  resources: [liveapplications/finalizers]
  verbs: [update]
# What it creates for a LiveApplication (server-side apply is create+patch;
# delete when the spec drops a child). Watches are label-selected, but RBAC
# cannot express that.
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, list, watch, create, patch, delete]
- apiGroups: [""]
  resources: [services, configmaps]
  verbs: [get, list, watch, create, patch]
# The ingest pods' identity per LiveApplication: a ServiceAccount, and a Role
# and RoleBinding for their stream-ownership Leases (operator/rbac.md).
- apiGroups: [""]
  resources: [serviceaccounts]
  verbs: [get, list, watch, create, patch]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, watch, create, patch]
# RBAC lets it grant only what it holds itself (escalation prevention): the
# Lease verbs of that Role, and nothing more. The operator never calls them
# here (its leader election has its own, name-limited Role).
- apiGroups: [coordination.k8s.io]
  resources: [leases]
  verbs: [get, list, create, update, delete]
# The ingest pods' PodDisruptionBudget (spec.podDisruptionBudget); deleted
# when the spec drops it.
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, delete]
# The RTMP Service's EndpointSlices: Ready waits for a ready endpoint, so a
# publish right after Ready is routed. Read-only.
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
# Pod states feed the Degraded condition: read-only.
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
{{- if .Values.operator.checkSecrets }}
# operator.checkSecrets: a metadata-only watch of Secrets (names, never data)
# reports a missing key-token Secret (reason KeySecretMissing). RBAC cannot
# grant metadata alone; checkSecrets=false drops this rule.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, watch]
{{- end }}
# Events about LiveApplications (events.k8s.io/v1; patch updates a series).
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}

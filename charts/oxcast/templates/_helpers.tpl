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
Role). Keep in step with the operator's documented permissions.
*/}}
{{- define "oxcast.managedRules" -}}
# Its own API: watch LiveApplications, report their status.
- apiGroups: [live.oxcast.dev]
  resources: [liveapplications]
  verbs: [get, list, watch]
- apiGroups: [live.oxcast.dev]
  resources: [liveapplications/status]
  verbs: [get, patch, update]
# Owner references with blockOwnerDeletion (where the
# OwnerReferencesPermissionEnforcement admission plugin is on).
- apiGroups: [live.oxcast.dev]
  resources: [liveapplications/finalizers]
  verbs: [update]
# What it creates for a LiveApplication (server-side apply, owner references).
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [""]
  resources: [services, configmaps, persistentvolumeclaims]
  verbs: [get, list, watch, create, update, patch, delete]
# Events about LiveApplications.
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end }}

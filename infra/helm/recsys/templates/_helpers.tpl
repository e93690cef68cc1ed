{{/* vim: set filetype=mustache: */}}
{{/*
Chart name, truncated to 63 characters (DNS label limit).
*/}}
{{- define "recsys.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name. Components append a suffix, so keep room for it (52 characters).
If the release name already contains the chart name it is used as is.
*/}}
{{- define "recsys.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 52 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Name of the Triton resources.
*/}}
{{- define "recsys.triton.fullname" -}}
{{- printf "%s-triton" (include "recsys.fullname" .) }}
{{- end }}

{{/*
Chart name and version, for the helm.sh/chart label.
*/}}
{{- define "recsys.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Namespace of all namespaced resources.
*/}}
{{- define "recsys.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride }}
{{- end }}

{{/*
Labels shared by every resource (Kubernetes recommended labels).
*/}}
{{- define "recsys.labels" -}}
helm.sh/chart: {{ include "recsys.chart" . }}
app.kubernetes.io/name: {{ include "recsys.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- with .Chart.AppVersion }}
app.kubernetes.io/version: {{ . | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: recsys
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/*
Labels of the gateway resources, and its selector labels.
*/}}
{{- define "recsys.gateway.labels" -}}
{{ include "recsys.labels" . }}
app.kubernetes.io/component: gateway
{{- end }}

{{- define "recsys.gateway.selectorLabels" -}}
app.kubernetes.io/name: {{ include "recsys.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end }}

{{/*
Labels of the Triton resources, and its selector labels.
*/}}
{{- define "recsys.triton.labels" -}}
{{ include "recsys.labels" . }}
app.kubernetes.io/component: triton
{{- end }}

{{- define "recsys.triton.selectorLabels" -}}
app.kubernetes.io/name: {{ include "recsys.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: triton
{{- end }}

{{/*
Name of the ServiceAccount.
*/}}
{{- define "recsys.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "recsys.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Image reference from {repository, tag, digest}; the tag defaults to the chart appVersion.
Usage: include "recsys.image" (dict "image" .Values.image "context" $)
*/}}
{{- define "recsys.image" -}}
{{- $img := .image }}
{{- if $img.digest }}
{{- printf "%s@%s" $img.repository $img.digest }}
{{- else }}
{{- printf "%s:%s" $img.repository (default .context.Chart.AppVersion $img.tag | toString) }}
{{- end }}
{{- end }}

{{/*
Name of the Secret holding the service's secrets.
*/}}
{{- define "recsys.secretName" -}}
{{- default (printf "%s-secrets" (include "recsys.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{/*
Whether any secret reaches the pods (an existing Secret, or a chart-managed one with a value).
*/}}
{{- define "recsys.secretEnabled" -}}
{{- if or .Values.secrets.existingSecret (include "recsys.secretCreate" .) }}true{{- end }}
{{- end }}

{{- define "recsys.secretCreate" -}}
{{- if not .Values.secrets.existingSecret }}
{{- range $k, $v := .Values.secrets.values }}{{- if $v }}true{{- end }}{{- end }}
{{- end }}
{{- end }}

{{/*
Address (host:port) of Triton's gRPC endpoint inside the cluster (model versions).
*/}}
{{- define "recsys.triton.grpcAddress" -}}
{{- printf "%s.%s.svc:%v" (include "recsys.triton.fullname" .) (include "recsys.namespace" .) .Values.triton.ports.grpc }}
{{- end }}

{{/*
Address (host:port) of Triton's HTTP endpoint inside the cluster (inference calls).
*/}}
{{- define "recsys.triton.httpAddress" -}}
{{- printf "%s.%s.svc:%v" (include "recsys.triton.fullname" .) (include "recsys.namespace" .) .Values.triton.ports.http }}
{{- end }}

{{/*
The rendered service configuration (config.yaml): .Values.config through tpl.
*/}}
{{- define "recsys.config" -}}
{{- tpl (toYaml .Values.config) . }}
{{- end }}

{{/*
Environment variables shared by the gateway and the sidecar: secrets as config overrides.
*/}}
{{- define "recsys.secretEnv" -}}
{{- if include "recsys.secretEnabled" . }}
{{- $secret := include "recsys.secretName" . }}
{{- range .Values.secrets.env }}
- name: {{ .name }}
  valueFrom:
    secretKeyRef:
      name: {{ $secret }}
      key: {{ .key }}
      optional: {{ .optional }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Scrape settings shared by every ServiceMonitor endpoint, with the endpoint's `job` label (the name
the Prometheus rules and dashboards select on). Usage:
include ... (dict "sm" .Values.serviceMonitor "job" "recsys-gateway")
*/}}
{{- define "recsys.serviceMonitor.endpoint" -}}
interval: {{ .sm.interval }}
scrapeTimeout: {{ .sm.scrapeTimeout }}
relabelings:
  - action: replace
    targetLabel: job
    replacement: {{ .job }}
  {{- with .sm.relabelings }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with .sm.metricRelabelings }}
metricRelabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

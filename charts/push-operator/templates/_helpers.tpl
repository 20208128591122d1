{{/* Chart name. */}}
{{- define "push-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, unless the release name already holds the chart name. */}}
{{- define "push-operator.fullname" -}}
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

{{- define "push-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Standard labels (every object; add app.kubernetes.io/component where it applies). */}}
{{- define "push-operator.labels" -}}
helm.sh/chart: {{ include "push-operator.chart" . }}
app.kubernetes.io/name: {{ include "push-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: push-operator
{{- end }}

{{/* Selector labels (stable across upgrades). */}}
{{- define "push-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "push-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end }}

{{- define "push-operator.serviceAccountName" -}}
{{- default (include "push-operator.fullname" .) .Values.serviceAccount.name }}
{{- end }}

{{- define "push-operator.workerServiceAccountName" -}}
{{- default (printf "%s-worker" (include "push-operator.fullname" .)) .Values.workerServiceAccount.name }}
{{- end }}

{{/* The one image, for the controller and the worker pods. */}}
{{- define "push-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

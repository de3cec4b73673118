{{/* The chart's name. */}}
{{- define "acb.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name; objects are named after it (room left for "-controller"). */}}
{{- define "acb.fullname" -}}
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

{{- define "acb.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "acb.labels" -}}
helm.sh/chart: {{ include "acb.chart" . }}
app.kubernetes.io/name: {{ include "acb.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: acb
{{- end }}

{{/* Selector labels of one component: call with (list . "controller"). */}}
{{- define "acb.selectorLabels" -}}
{{- $ := index . 0 -}}
app.kubernetes.io/name: {{ include "acb.name" $ }}
app.kubernetes.io/instance: {{ $.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end }}

{{- define "acb.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{- define "acb.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "acb.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "acb.tokenSecretName" -}}
{{- .Values.clusterToken.existingSecret | default (printf "%s-cluster-token" (include "acb.fullname" .)) }}
{{- end }}

{{- define "acb.tlsSecretName" -}}
{{- required "tls.enabled needs tls.secretName: a Secret with tls.crt, tls.key and ca.crt" .Values.tls.secretName }}
{{- end }}

{{/* The controller Service's DNS name, which executors connect to and its certificate names. */}}
{{- define "acb.controllerHost" -}}
{{- printf "%s-controller.%s.svc" (include "acb.fullname" .) .Release.Namespace }}
{{- end }}

{{/* A settings map as TOML lines: strings quoted, booleans and whole numbers bare. */}}
{{- define "acb.toml" -}}
{{- range $k, $v := . }}
{{- if kindIs "string" $v }}
{{ $k }} = {{ $v | toJson }}
{{- else if kindIs "bool" $v }}
{{ $k }} = {{ $v }}
{{- else if or (kindIs "float64" $v) (kindIs "int" $v) (kindIs "int64" $v) }}
{{ $k }} = {{ int64 $v }}
{{- else }}
{{- fail (printf "settings.%s: a string, a boolean or a whole number" $k) }}
{{- end }}
{{- end }}
{{- end }}

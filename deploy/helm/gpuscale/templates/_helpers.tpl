{{/* Labels on every object: the component's name (also its selector) and the chart's. */}}
{{- define "gpuscale.labels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/part-of: gpuscale
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version }}
{{- with .root.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels of a component's pods. */}}
{{- define "gpuscale.podLabels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/part-of: gpuscale
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end }}

{{/* A component's image: repository:tag, the tag defaulting to the chart's appVersion. */}}
{{- define "gpuscale.image" -}}
{{ .image.repository }}:{{ .image.tag | default .root.Chart.AppVersion }}
{{- end }}

{{- define "gpuscale.validate" -}}
{{- if not (has .Values.mode (list "keda" "direct")) }}
{{- fail (printf "mode: expected keda or direct, found %q" .Values.mode) }}
{{- end }}
{{- if and .Values.mtls.certManager.enabled (not .Values.mtls.enabled) }}
{{- fail "mtls.certManager.enabled needs mtls.enabled: true" }}
{{- end }}
{{- if and .Values.mtls.enabled (eq .Values.mode "direct") }}
{{- fail "mtls secures KEDA's gRPC calls; direct mode has none: set mtls.enabled=false or mode=keda" }}
{{- end }}
{{- end }}

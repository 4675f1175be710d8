{{/* The name every object of the release starts with. */}}
{{- define "faultline.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "faultline.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: faultline.selector (dict "ctx" . "component" "agent"). */}}
{{- define "faultline.selector" -}}
app.kubernetes.io/name: {{ .ctx.Chart.Name }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "faultline.image" -}}
{{- printf "%s/%s:%s" .ctx.Values.image.registry .name (.ctx.Values.image.tag | default .ctx.Chart.AppVersion) -}}
{{- end -}}

{{- define "faultline.observerUrl" -}}
{{- printf "http://%s-observer.%s.svc:9464" (include "faultline.fullname" .) .Release.Namespace -}}
{{- end -}}

{{- define "faultline.otlpEndpoint" -}}
{{- .Values.otlpEndpoint | default (printf "http://%s-observer.%s.svc:4317" (include "faultline.fullname" .) .Release.Namespace) -}}
{{- end -}}

{{/*
The observer's token for OTLP exports (OpenTelemetry's own variable; the
value is percent-decoded, %20 a space), when observer.tokenSecret is set.
*/}}
{{- define "faultline.otlpToken" -}}
{{- if .Values.observer.tokenSecret }}
- name: FAULTLINE_OBSERVER_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ .Values.observer.tokenSecret }}, key: token}
- name: OTEL_EXPORTER_OTLP_HEADERS
  value: authorization=Bearer%20$(FAULTLINE_OBSERVER_TOKEN)
{{- end }}
{{- end }}

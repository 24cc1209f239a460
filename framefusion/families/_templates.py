"""Chat templates several families share (a family's own template lives in its module).

Each is close to the published checkpoint's own template, reduced to what a prompt about one video needs: system
prompt, the user's text and media placeholders where the processor expects them, the assistant's turn.
"""

from __future__ import annotations

# Qwen's ChatML: default system prompt, <|vision_start|><|video_pad|><|vision_end|> per video where the user put it;
# the processor expands the single <|video_pad|> to one per video token.
QWEN_CHAT_TEMPLATE = r"""
{%- set default_system = 'You are a helpful assistant.' -%}
{%- for message in messages -%}
  {%- if loop.first and message['role'] != 'system' -%}
    {{- '<|im_start|>system\n' + default_system + '<|im_end|>\n' -}}
  {%- endif -%}
  {{- '<|im_start|>' + message['role'] + '\n' -}}
  {%- if message['content'] is string -%}
    {{- message['content'] -}}
  {%- else -%}
    {%- for part in message['content'] -%}
      {%- if part['type'] == 'image' -%}
        {{- '<|vision_start|><|image_pad|><|vision_end|>' -}}
      {%- elif part['type'] == 'video' -%}
        {{- '<|vision_start|><|video_pad|><|vision_end|>' -}}
      {%- elif part['type'] == 'text' -%}
        {{- part['text'] -}}
      {%- endif -%}
    {%- endfor -%}
  {%- endif -%}
  {{- '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<|im_start|>assistant\n' -}}
{%- endif -%}
""".strip()

# LLaVA-OneVision's Qwen2 conversation format: images, then videos, each on its own line, then the text.
LLAVA_QWEN_CHAT_TEMPLATE = r"""
{%- set default_system = 'You are a helpful assistant.' -%}
{%- for message in messages -%}
  {%- if loop.first and message['role'] != 'system' -%}
    {{- '<|im_start|>system\n' + default_system + '<|im_end|>\n' -}}
  {%- endif -%}
  {{- '<|im_start|>' + message['role'] + '\n' -}}
  {%- if message['content'] is string -%}
    {{- message['content'] -}}
  {%- else -%}
    {%- for part in message['content'] if part['type'] == 'image' -%}{{- '<image>\n' -}}{%- endfor -%}
    {%- for part in message['content'] if part['type'] == 'video' -%}{{- '<video>\n' -}}{%- endfor -%}
    {%- for part in message['content'] if part['type'] == 'text' -%}{{- part['text'] -}}{%- endfor -%}
  {%- endif -%}
  {{- '<|im_end|>\n' -}}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{- '<|im_start|>assistant\n' -}}
{%- endif -%}
""".strip()

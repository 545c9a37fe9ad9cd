# The production image: dependencies from the lock (hashes checked), the code baked in (not
# mounted), run as an unprivileged user. Not built by CI (no Docker engine there): see README.
FROM python:3.11-slim
WORKDIR /app
COPY requirements.lock ./
RUN pip install --no-cache-dir --require-hashes -r requirements.lock
COPY . .
RUN pip install --no-cache-dir --no-deps . \
 && useradd --system --uid 10001 --no-create-home callstream
USER 10001

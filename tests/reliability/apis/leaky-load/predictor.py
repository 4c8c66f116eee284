class Predictor:
    def __init__(self, config):
        raise ConnectionError("could not connect to postgres://admin:s3cr3t-pw@db.internal/prod")

    def predict(self, payload):
        return payload

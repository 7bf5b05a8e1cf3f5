"""Lists services and requests from a running civicline with the PyPI client `georeport`
(the code path a city's Open311 consumer would use), and prints what it got as one JSON line.
Usage: georeport_client.py ROOT_URL REQUEST_ID
"""
import json
import sys

from georeport import GeoReport

root, request_id = sys.argv[1], sys.argv[2]
client = GeoReport(root)
services = client.get_service_list()
requests_all = client.get_service_requests()
open_only = client.get_service_requests(status="open")
by_code = client.get_service_requests(service_code="pothole")
one = client.get_service_request(request_id)
print(json.dumps({
    "services": services,
    "requests": requests_all,
    "open": open_only,
    "pothole": by_code,
    "one": one,
}))
